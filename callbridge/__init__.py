"""callbridge: live phone-call transcription from Twilio Media Streams with ElevenLabs Scribe."""

__version__ = "0.1.0"
