"""Networks: the PUQ unrolled reconstruction with MC dropout, and its batched sampling."""
