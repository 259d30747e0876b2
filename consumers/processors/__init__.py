"""State processors (faust-streaming): devices and rounds; one faust app (= consumer group) each."""
