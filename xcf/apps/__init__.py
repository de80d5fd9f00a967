"""Applications: the demo, the audit, knowledge extrapolation and the command line.

The only place that knows the digits reference models and the method list (:mod:`xcf.apps.methods`).
"""
