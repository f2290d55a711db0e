"""The `tinygrad-tx` command (also `python -m tinygrad_tx`).

    tinygrad-tx train (--task NAME | --data train.tsv [--valid valid.tsv]) --out RUN_DIR
                      [--minutes M | --steps N] [--config small|base|paper] [--device cpu|cuda]
                      [--seed S] [--resume] [--char] [--dropout P]
    mpirun -np N tinygrad-tx train ...      # data-parallel over N processes (see tinygrad_tx.distributed)
    tinygrad-tx translate --checkpoint RUN_DIR [--beam N] "text" ...      # or lines on stdin
    tinygrad-tx evaluate  --checkpoint RUN_DIR (--task NAME | --data test.tsv) [--beam N] [--json]
    tinygrad-tx draw [--what] WHAT --out FILE [--depth K] [--backward]
    tinygrad-tx draw [--what] WHAT --html FILE [--depth K]                # an interactive page
    tinygrad-tx draw --checkpoint RUN_DIR --sentence "text" --attention --out DIR
    tinygrad-tx draw --checkpoint RUN_DIR --sentence "text" --html FILE
    tinygrad-tx demo [--out RUN_DIR] [--minutes M]
    tinygrad-tx guide [--checkpoint RUN_DIR] [--quick] [--out DIR] [--check]
    tinygrad-tx bench [...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import tinygrad_tx as tx
from tinygrad_tx import distributed as dist
from tinygrad_tx import functional as F
from tinygrad_tx import viz

from . import drawings, tasks
from .analysis import translate_and_attend
from .checkpoint import has_checkpoint, load_model, read_config
from .config import CheckpointError, TrainConfig
from .train import DECODE_PAIRS, TrainingInterrupted, decoded_note, train
from .translate import Translator, format_score

DEFAULT_MINUTES = 5
DEMO_SENTENCES = ["ninety-seven", "one thousand, nine hundred and seventy-one", "two hundred and eighty thousand"]


class CommandError(Exception):
    """A user error with a message for the terminal (no traceback)."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------- train
def _explicit(args, names) -> dict:
    """The options the user actually gave (argparse defaults are None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_train(args) -> int:
    given = _explicit(args, ["task", "data", "valid", "config", "seed", "batch_size", "eval_every", "lr_factor",
                             "warmup_steps"])
    if args.char:
        given["level"] = "char"
    if args.batch_tokens is not None:
        given.update(batch_size=args.batch_tokens, batch_unit="tokens")
    if "valid" in given and "data" not in given:
        raise CommandError("--valid needs --data (a generated --task has its own validation split)")
    if "data" in given:
        given.setdefault("task", None)
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise CommandError(f"--dropout must be at least 0 and below 1, got {args.dropout}")
    # Under mpirun only rank 0 reads the run directory (the others may run on hosts that cannot see it).
    saved = dist.from_root(lambda: read_config(args.out)[0].to_json()
                           if args.resume and has_checkpoint(args.out) else None)
    if saved is not None:
        # Settings not given again are the checkpoint's; settings given must match it (checked by Trainer).
        if "task" in given:
            given.setdefault("data", None)
            given.setdefault("valid", None)
        cfg = TrainConfig(**{**saved, **given})
    else:
        cfg = TrainConfig(**given)
    if args.dropout is not None:                    # overrides the preset's dropout (and a checkpoint's)
        cfg.model = {**cfg.model, "dropout": args.dropout}
    minutes = args.minutes if args.minutes is not None or args.steps is not None else DEFAULT_MINUTES
    main_process = dist.rank() == 0
    if args.minutes is None and args.steps is None and main_process:
        print(f"training for {DEFAULT_MINUTES} minutes (set --minutes or --steps)", file=sys.stderr)
    metrics = train(cfg, args.out, steps=args.steps, minutes=minutes, device=args.device, resume=args.resume,
                    force=args.force, decode_pairs=args.decode_pairs or None)
    if not main_process:
        return 0
    header = f"validation after step {metrics['step']}:"
    if "valid_accuracy" in metrics:             # a record of this session (older runs' records lack it)
        header += (f" loss {metrics['valid_loss']:.3f}, token accuracy {metrics['valid_accuracy']:.1f}% "
                   f"(teacher-forced); {decoded_note(metrics, metrics['valid_pairs'])}:")
    _print_metrics(metrics, as_json=False, header=header)
    print(f"checkpoint: {args.out}  (try: tinygrad-tx translate --checkpoint {args.out} \"...\")")
    return 0


# ---------------------------------------------------------------------------- translate / evaluate
def cmd_translate(args) -> int:
    """One output line per input line: a blank line gives a blank line, and a sentence too long for the
    model is reported on stderr (and gives a blank line) while the others are translated."""
    if args.text:
        texts = args.text
    else:
        texts = sys.stdin.read().splitlines()
        if texts and texts[0].startswith("\ufeff"):      # a UTF-8 byte order mark
            texts[0] = texts[0][1:]
    if not any(t.strip() for t in texts):
        raise CommandError("nothing to translate: give sentences as arguments or lines on stdin")
    translator = Translator.load(args.checkpoint, args.device)
    todo = []
    for i, text in enumerate(texts):
        if not text.strip():
            continue
        problem = translator.length_problem(text)
        if problem:
            _warn(f"line {i + 1} not translated: {problem}")
        else:
            todo.append(i)
    out = [""] * len(texts)
    for i, translation in zip(todo, translator.translate([texts[i] for i in todo], beam=args.beam, warn=_warn)):
        out[i] = translation
    for line in out:
        print(line)
    return 1 if len(todo) < sum(bool(t.strip()) for t in texts) else 0


def cmd_evaluate(args) -> int:
    cfg, vocab, model = load_model(args.checkpoint, args.device)
    if args.data is not None:
        pairs = tasks.read_tsv(args.data)
    else:
        pairs = tasks.load_task(args.task, "test", seed=cfg.seed)   # the run's seed: held out from its training
    metrics = Translator(model, vocab).evaluate(pairs, beam=args.beam, warn=_warn)
    _print_metrics(metrics, args.json, header=f"{len(pairs)} sentences, beam {args.beam}:")
    return 0


def _print_metrics(metrics: dict, as_json: bool, header: str = "") -> None:
    if as_json:
        print(json.dumps(metrics))
        return
    if header:
        print(header)
    for key in ("exact_match", "bleu", "chrf"):
        print(f"  {key}: {format_score(metrics[key], 2)}")


# ---------------------------------------------------------------------------- draw
def cmd_draw(args) -> int:
    if args.out is None and args.html is None:
        raise CommandError("draw: give --out FILE (a picture, or a directory with --attention) or --html FILE")
    if args.attention or args.checkpoint or args.sentence:
        if not (args.checkpoint and args.sentence and (args.attention or args.html)):
            raise CommandError("a trained run is drawn with --checkpoint RUN_DIR --sentence TEXT and "
                               "--attention --out DIR (heatmaps) or --html FILE (the interactive page)")
        if args.attention:
            if args.out is None:
                raise CommandError("--attention needs --out DIR")
            for path in draw_attention(args.checkpoint, args.sentence, args.out, device=args.device):
                print(path)
        if args.html:
            print(explore_translation(args.checkpoint, args.sentence, args.html, device=args.device,
                                      depth=args.depth))
        return 0
    if args.what_option is not None:
        if args.what is not None and args.what != args.what_option:
            raise CommandError(f"draw: got two things to draw, {args.what!r} and --what {args.what_option!r}")
        args.what = args.what_option
    if args.what is None:
        raise CommandError(f"draw: name what to draw ({', '.join(drawings.EXAMPLES)}), or use --attention")
    if args.out is not None:
        print(drawings.draw_command(what=args.what, out=args.out, depth=args.depth, backward=args.backward))
    if args.html is not None:
        print(drawings.explore_command(what=args.what, out=args.html, depth=args.depth))
    return 0


def explore_translation(run_dir: str, sentence: str, path: str, device: str | None = None,
                        depth: int | None = None) -> str:
    """Write the interactive page of a trained run reading `sentence`: the model's forward pass on the
    sentence and its own translation (teacher forcing, eval mode), the backward pass of that loss with
    its gradient norms, and every layer's attention heads. Returns the path written."""
    _cfg, vocab, model = load_model(run_dir, device)
    title = f"tinygrad_tx: {os.path.basename(os.path.normpath(run_dir))} reading {sentence!r}"
    return explore_sentence(model, vocab, sentence, path, title=title, depth=depth)


def explore_sentence(model, vocab, sentence: str, path: str, title: str = "", depth: int | None = None) -> str:
    """explore_translation for a model in memory (trained or not) and its vocabulary."""
    t = translate_and_attend(model, vocab, sentence)
    model.eval()
    src = tx.Tensor([t.src_ids], dtype=tx.int64, device=model.src_embed.weight.device)                # (1, S)
    tgt_in = tx.Tensor([vocab.tgt.encode(t.tgt_in_tokens)], dtype=tx.int64, device=src.device)       # (1, T)
    tgt_out = tx.Tensor([vocab.tgt.encode(t.tgt_out_tokens)], dtype=tx.int64, device=src.device)     # (1, T)
    src.name, tgt_in.name, tgt_out.name = "src tokens", "tgt tokens (shifted right)", "tgt tokens (next)"
    logits = model(src, tgt_in)                                                   # (1, T, tgt_vocab)
    logits.name = "logits"
    loss = F.cross_entropy(logits, tgt_out)
    loss.name = "loss"
    model.zero_grad()
    with viz.record_gradients():
        loss.backward()
    attention = []
    for i, layer in enumerate(model.encoder.layers):
        attention.append({"name": f"encoder {i} self-attention", "weights": layer.self_attn.attn[0],
                          "queries": t.src_tokens, "keys": t.src_tokens})
    for i, layer in enumerate(model.decoder.layers):
        attention.append({"name": f"decoder {i} self-attention", "weights": layer.self_attn.attn[0],
                          "queries": t.tgt_out_tokens, "keys": t.tgt_in_tokens})
        attention.append({"name": f"decoder {i} cross-attention", "weights": layer.cross_attn.attn[0],
                          "queries": t.tgt_out_tokens, "keys": t.src_tokens})
    caption = f"{sentence!r} -> {t.translation!r}; rows: the token predicted, columns: the tokens attended to"
    return viz.explore(loss, module=model, path=path, title=title or f"tinygrad_tx reading {sentence!r}",
                       attention=attention,
                       attention_caption=caption, depth=depth)


def draw_attention(run_dir: str, sentence: str, out_dir: str, device: str | None = None) -> list[str]:
    """Translate `sentence`, then write the attention weights of every layer as heatmaps in out_dir:
    encoder self-attention, decoder self-attention and decoder cross-attention (one file each per layer).
    Returns the paths written."""
    _cfg, vocab, model = load_model(run_dir, device)
    t = translate_and_attend(model, vocab, sentence)     # every layer's .attn now holds this sentence
    src_tokens, tgt_in_tokens, tgt_out_tokens = t.src_tokens, t.tgt_in_tokens, t.tgt_out_tokens
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    pictures = []
    for i, layer in enumerate(model.encoder.layers):
        pictures.append((f"encoder{i}_self", layer.self_attn.attn, src_tokens, src_tokens))
    for i, layer in enumerate(model.decoder.layers):
        pictures.append((f"decoder{i}_self", layer.self_attn.attn, tgt_in_tokens, tgt_out_tokens))
        pictures.append((f"decoder{i}_cross", layer.cross_attn.attn, src_tokens, tgt_out_tokens))
    for name, weights, keys, queries in pictures:
        path = os.path.join(out_dir, f"attention_{name}.png")
        paths.append(viz.plot_attention(weights[0], keys, queries, path,
                                        title=f"{name.replace('_', ' ')} attention: {sentence!r}"))
    return paths


# ---------------------------------------------------------------------------- demo / bench
def cmd_demo(args) -> int:
    """Train numbers-en-fr briefly, evaluate it, translate a few sentences, and draw pictures."""
    out = args.out
    resume = has_checkpoint(out)
    print(f"1. training numbers-en-fr (config small) for {args.minutes} minutes into {out}"
          + (" (resuming)" if resume else ""), file=sys.stderr)
    train(TrainConfig(task="numbers-en-fr"), out, minutes=args.minutes, device=args.device, resume=resume)
    translator = Translator.load(out, args.device)
    print("2. evaluating on 1000 held-out numbers", file=sys.stderr)
    test = tasks.load_task("numbers-en-fr", "test")
    _print_metrics(translator.evaluate(test, warn=_warn), as_json=False, header="test set, greedy:")
    print("3. translating", file=sys.stderr)
    for src, tgt in zip(DEMO_SENTENCES, translator.translate(DEMO_SENTENCES, warn=_warn)):
        print(f"  {src}  ->  {tgt}")
    print("4. drawing pictures", file=sys.stderr)
    pictures = os.path.join(out, "pictures")
    os.makedirs(pictures, exist_ok=True)
    try:
        print("  " + drawings.draw_command(what="encoder-layer", out=os.path.join(pictures, "encoder_layer.svg")))
        backward_path = os.path.join(pictures, "encoder_layer_backward.svg")
        print("  " + drawings.draw_command(what="encoder-layer", out=backward_path, backward=True))
    except (RuntimeError, ImportError, viz.GraphvizNotInstalled) as e:
        _warn(f"skipped the graph pictures: {e}")
    try:
        for path in draw_attention(out, DEMO_SENTENCES[1], pictures, device=args.device):
            print("  " + path)
    except ImportError as e:
        _warn(f"skipped the attention heatmaps: {e}")
    print("  " + explore_translation(out, DEMO_SENTENCES[1], os.path.join(pictures, "transformer.html"),
                                     device=args.device) + "  (open it in a browser)")
    return 0


def cmd_bench(argv) -> int:
    from . import bench
    bench.main(argv)
    return 0


def cmd_guide(args) -> int:
    """Regenerate the pages of docs/ from their sources in docs/src/: notebooks, markdown and figures."""
    from . import guide
    if args.check:
        stale = guide.notebooks_in_sync(args.docs)
        for path in stale:
            print(f"guide: {path} differs from its source; run tinygrad-tx guide", file=sys.stderr)
        return 1 if stale else 0
    for path in guide.build(args.docs, pages=args.pages or guide.PAGES, quick=args.quick,
                            checkpoint=args.checkpoint, out=args.out):
        print(path)
    return 0


# ---------------------------------------------------------------------------- parser
def _whole_number_from(minimum: int):
    """argparse type: a whole number >= minimum (--steps 0 is allowed, --batch-size 0 is not)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


_at_least_one = _whole_number_from(1)
_at_least_zero = _whole_number_from(0)


def _positive(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinygrad-tx", description="Train and use toy Transformer translators "
                                "built on the tinygrad_tx autodiff engine.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a translator (a generated task or a TSV file)")
    source = t.add_mutually_exclusive_group()
    source.add_argument("--task", help=f"generated task: copy, reverse, sort, numbers-SRC-TGT "
                                       f"(default {tasks.DEFAULT_TASK})")
    source.add_argument("--data", help="training pairs, one 'source<TAB>target' per line")
    t.add_argument("--valid", help="validation pairs (TSV); default: hold out up to 1000 training pairs")
    t.add_argument("--out", required=True, help="the run directory (checkpoint, vocab, metrics)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=_positive, help=f"train this many minutes (default {DEFAULT_MINUTES})")
    budget.add_argument("--steps", type=_at_least_zero, help="train until this many steps in total "
                                                             "(0: save the untrained model)")
    t.add_argument("--config", choices=["small", "base", "paper"], help="model size (default small)")
    t.add_argument("--device", choices=["cpu", "cuda"], help="default cpu (or $TX_DEVICE)")
    t.add_argument("--seed", type=int, help="seed for data, initialisation and batch order (default 0)")
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly")
    t.add_argument("--force", action="store_true", help="write into an --out that holds other files")
    t.add_argument("--char", action="store_true", help="character-level tokens instead of words")
    t.add_argument("--dropout", type=float, help="dropout probability, instead of the preset's (0.1)")
    batch = t.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=_at_least_one, help="sentences per batch (default 64)")
    batch.add_argument("--batch-tokens", type=_at_least_one, help="padded tokens per batch, instead of --batch-size")
    t.add_argument("--eval-every", type=_at_least_one, help="validate and checkpoint every N steps (default 500)")
    t.add_argument("--decode-pairs", type=_at_least_zero, default=DECODE_PAIRS, metavar="N",
                   help=f"each validation greedy-decodes N validation pairs for exact match, BLEU and chrF "
                        f"(default {DECODE_PAIRS}; 0: all); loss and token accuracy always cover all of them")
    t.add_argument("--lr-factor", type=_positive, help="scale of the Noam learning rate (default 0.5)")
    t.add_argument("--warmup-steps", type=_at_least_one, help="steps of learning-rate warm-up (default 200)")

    tr = sub.add_parser("translate", help="translate sentences with a trained run")
    tr.add_argument("--checkpoint", required=True, metavar="RUN_DIR")
    tr.add_argument("--beam", type=_at_least_one, default=1, help="beam size (1: greedy decoding)")
    tr.add_argument("--device", choices=["cpu", "cuda"])
    tr.add_argument("text", nargs="*", help="sentences to translate; none: read lines from stdin")

    e = sub.add_parser("evaluate", help="exact match, BLEU and chrF on a test set")
    e.add_argument("--checkpoint", required=True, metavar="RUN_DIR")
    test = e.add_mutually_exclusive_group(required=True)
    test.add_argument("--task", help="a generated task: its test split with the run's seed")
    test.add_argument("--data", help="test pairs (TSV)")
    e.add_argument("--beam", type=_at_least_one, default=1, help="beam size (1: greedy decoding)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--device", choices=["cpu", "cuda"])

    d = sub.add_parser("draw", help="draw computation graphs, or attention heatmaps of a trained run")
    d.add_argument("what", nargs="?", help="mlp, attention, encoder-layer, decoder-layer or transformer")
    d.add_argument("--what", dest="what_option", metavar="WHAT", help="the same, as an option")
    d.add_argument("--out", help="output file (graph) or directory (--attention)")
    d.add_argument("--html", metavar="FILE", help="write an interactive page (open it in a browser)")
    d.add_argument("--depth", type=int, help="collapse modules deeper than this (--html: the depth it opens at)")
    d.add_argument("--backward", action="store_true", help="draw the backward pass")
    d.add_argument("--checkpoint", metavar="RUN_DIR", help="with --attention or --html: the trained run")
    d.add_argument("--sentence", help="with --attention or --html: the source sentence")
    d.add_argument("--attention", action="store_true", help="per-layer attention heatmaps of a translation")
    d.add_argument("--device", choices=["cpu", "cuda"])

    m = sub.add_parser("demo", help="train numbers-en-fr for a few minutes, evaluate, translate, draw")
    m.add_argument("--out", default="runs/demo", help="the run directory (default runs/demo)")
    m.add_argument("--minutes", type=_positive, default=3.0)
    m.add_argument("--device", choices=["cpu", "cuda"])

    gd = sub.add_parser("guide", help="regenerate docs/: the guide and the autodiff lesson (pages, notebooks, "
                        "figures) from their sources in docs/src/")
    gd.add_argument("--docs", default="docs", help="the folder holding src/ (default docs)")
    gd.add_argument("--out", help="write the pages, notebooks and figures here instead of into --docs")
    gd.add_argument("--checkpoint", metavar="RUN_DIR",
                    help="the guide's model: load this run, or train into it (default runs/guide)")
    gd.add_argument("--pages", nargs="+", metavar="NAME", help="only these pages (illustrated, autodiff)")
    gd.add_argument("--quick", action="store_true", help="a tiny model trained a few steps (seconds; what CI runs)")
    gd.add_argument("--check", action="store_true",
                    help="only check that the committed notebooks match their sources (exit 1 if not)")

    sub.add_parser("bench", help="benchmark against PyTorch (options: tinygrad-tx bench --help)", add_help=False)
    return p


COMMANDS = {"train": cmd_train, "translate": cmd_translate, "evaluate": cmd_evaluate, "draw": cmd_draw,
            "demo": cmd_demo, "guide": cmd_guide}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":             # the benchmark parses its own options
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CommandError, tasks.DataError, CheckpointError, RuntimeError, ValueError, OSError) as e:
        if os.environ.get("TX_DEBUG"):         # show the traceback
            raise
        _report_error(args.command, e)
        return 1
    except TrainingInterrupted as e:
        print(f"tinygrad-tx {args.command}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"tinygrad-tx {args.command}: interrupted", file=sys.stderr)
        return 130


def _report_error(command: str, error: Exception) -> None:
    """Print the error once. Under mpirun, an error that only this rank met stops the whole job (the
    other ranks would otherwise wait for this one forever)."""
    if not dist.is_initialized() or dist.world_size() == 1:     # (an MPI that failed to start, too)
        print(f"tinygrad-tx {command}: error: {error}", file=sys.stderr)
    elif getattr(error, "raised_on_every_rank", False):     # every rank stops by itself
        if dist.rank() == 0:
            print(f"tinygrad-tx {command}: error: {error}", file=sys.stderr)
    else:
        print(f"tinygrad-tx {command} (rank {dist.rank()}): error: {error}", file=sys.stderr, flush=True)
        dist.abort(1)
