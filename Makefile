# Thin wrappers over ./dev, which also works without make.
.PHONY: demo test docs bench
demo:
	sh dev demo
test:
	sh dev test
docs:
	sh dev docs
bench:
	sh dev bench
