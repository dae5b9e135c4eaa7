"""What the Snakemake workflow asks of the package, without torch: the results layout,
merge specs, subsets of experts and seeds."""
