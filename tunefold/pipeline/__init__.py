"""The stage graph, how stages run and report, and the workspace lock."""
