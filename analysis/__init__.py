"""db3d analysis: reads a sweep's Parquet results only (tables, plots, the HTML report).

Never imports training code (db3d.method.stages, torch, ray, diffusers): pandas, pyarrow, numpy, matplotlib.
Entry point: `analysis.report.main(argv)` (the `db3d report` command).
"""
