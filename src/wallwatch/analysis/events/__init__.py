"""Stage 4, events: change points per series, grouped into one event per country and service.

`detector` finds blocking and volume-collapse segments in one series;
`grouping` joins them across networks into events with an onset and an end;
`lifecycle` keeps the append-only event log; `feeds` writes it as Atom;
`queries` holds the SQL for the rule evidence of an event.
"""
