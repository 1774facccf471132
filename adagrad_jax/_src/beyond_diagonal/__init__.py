"""Beyond the diagonal: full-matrix Adagrad, Shampoo and AdaGrad-Norm.

Their shared machinery (blocks, inverse roots, placement of statistics) is written once here.
"""
