"""Small shared helpers: configs, timing, reports, progress bars, devices."""
