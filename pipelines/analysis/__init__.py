"""What the numbers mean: alignment metrics between attribution vectors, the null floor and the
diagnosticity controls, per-decision statistics (paired intervals, power, gates), and whether a
fine-tune moved the policy."""
