"""pgmedic's remediator: Alertmanager's webhook in, verified restarts under a budget, KSYS notified.

Alertmanager delivers at least once; the remediator acts at most once per failure episode
(fingerprint + startsAt). Every notification, decision, action, result and KSYS delivery is
journaled before it is acknowledged or carried out.
"""
