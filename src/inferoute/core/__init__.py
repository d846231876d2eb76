"""The sans-I/O core: requests, endpoints, scheduling and admission.

Nothing in this package performs I/O, starts tasks or reads a clock: callers pass the time in.
The HTTP gateway, the Envoy ext_proc picker and the virtual-time benchmark all drive these
same objects.
"""
