"""What users read: report, show/trials/space, dashboard notes, printed lines and formats."""
