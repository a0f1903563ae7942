"""Operations: what keeps the fleet honest and watched.

The sweeper, the dead-letter queue, reconciliation, metrics (CloudWatch and Prometheus), readiness
checks, logging and the AWS resources a local stack makes. The worker and the web both use it; it
imports the domain, never the HTTP edge.
"""
