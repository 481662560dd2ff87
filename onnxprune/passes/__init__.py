"""The pipeline's passes, one module each; ``base`` says what a pass declares (the context fields
it requires and provides) and checks a list of them before it runs."""
