"""The report: run dirs loaded (runs), statistics (stats), one module per family of parts (parts/), plots
(plots) and tables as markdown (render). `trainbench.summarize` puts them together."""
