"""Build an expression, run backward, print the gradients, and check them with finite differences."""
import tinygrad_tx as tx

x = tx.Tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
w = tx.Tensor([0.5, -1.0, 2.0], requires_grad=True)
y = ((x * w).relu().sum(axis=1) ** 2).mean()   # w broadcasts over the rows of x
y.backward()
print("y      =", y.item())
print("dy/dx  =", x.grad.tolist())
print("dy/dw  =", w.grad.tolist())
print("gradcheck:", tx.gradcheck(lambda x, w: ((x * w).relu().sum(axis=1) ** 2).mean(), [x, w]))
