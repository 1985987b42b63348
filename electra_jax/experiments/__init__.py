"""Studies built from the library's jobs: `ablation` (the paper's objective ablation)."""
