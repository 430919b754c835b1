"""holmes-stream: Kafka-fed AI root-cause investigations of alerts with HolmesGPT."""
