"""Measurement tools around the serving code: the gateway overhead benchmark, the stand-in model
server it drives, the picker benchmark. Serving code never imports this package."""
