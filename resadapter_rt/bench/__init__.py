"""Side-by-side speed measurements behind ``resadapter-rt bench`` (the scripts in ``benchmarks/``
use them too). It sits above every stage and may import any of them; nothing imports it but ``cli``.
"""
