# Thin wrappers over ./dev, which also works without make.
.PHONY: demo test bench
demo:
	sh dev demo
test:
	sh dev test
bench:
	sh dev bench
