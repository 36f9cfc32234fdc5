"""Where accuracy is lost, and the per-layer plan that meets a target: what is measured (:mod:`.metrics`), the loss
and recovery of each analog unit (:mod:`.sensitivity`), the search for the cheapest plan (:mod:`.search`), and
their tables and figures (:mod:`.outputs`). The plan files themselves are :mod:`analogize.plans`."""
