"""The regularized members: proximal Adagrad, Adagrad dual averaging and FTRL."""
