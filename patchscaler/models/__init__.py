"""Networks: the GRM (global restoration) and its loss; the Patch-DiT lives beside them."""
