"""HW04 data: the on-disk layout, its validation, the packed feature bank and the synthetic set."""
