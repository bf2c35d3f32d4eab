"""The bundled demo: a small fault-injectable HTTP service that medkit supervises and recovers."""
