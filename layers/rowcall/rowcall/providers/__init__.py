"""Run providers behind one port (`port.py`): FLORA (`flora.py`) and Replicate (`replicate.py`)."""
