"""Small shared helpers: configs, atomic writes, figures, timing, reports, progress bars,
devices."""
