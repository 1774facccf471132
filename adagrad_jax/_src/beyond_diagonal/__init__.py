"""Beyond the diagonal: full-matrix Adagrad, Shampoo and AdaGrad-Norm, and their shared preconditioner machinery."""
