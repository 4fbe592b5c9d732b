"""Report parts: each is a function of the Context returning a PartOutput (markdown, tables, findings, plots)."""
