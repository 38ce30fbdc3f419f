"""Pictures: label colours and overlays, embedding projections and statistics, the explorer."""
