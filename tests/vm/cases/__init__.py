"""The VM boot test's scenarios, one module each (see e2e.py for the order)."""
