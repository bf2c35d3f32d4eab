"""Every side effect medkit performs: probes, actions on real systems, notifications."""
