"""The OpenAI Python SDK against the gateway for vLLM's other endpoints: embeddings, the
Responses API (plain, streamed, a follow-up by previous_response_id, retrieve) and audio
transcriptions and translations. Prints one JSON summary line.

Usage: surface.py BASE_URL KEY"""

import io
import json
import sys

from openai import OpenAI

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key=key, max_retries=0)
out = {}

emb = client.embeddings.create(model="embed-model", input=["hello", "world"])
out["embeddings"] = {"n": len(emb.data), "dims": len(emb.data[0].embedding), "prompt_tokens": emb.usage.prompt_tokens}

first = client.responses.create(model="resp-model", input="hello")
second = client.responses.create(model="resp-model", input="again", previous_response_id=first.id)
got = client.responses.retrieve(second.id)
out["responses"] = {
    "text": first.output_text,
    "input_tokens": first.usage.input_tokens,
    "follow_up_previous": second.previous_response_id == first.id,
    "retrieved": got.id == second.id,
}

events, completed_id = [], None
with client.responses.stream(model="resp-model", input="stream me") as stream:
    for ev in stream:
        events.append(ev.type)
    final = stream.get_final_response()
out["responses_stream"] = {"deltas": events.count("response.output_text.delta"), "text": final.output_text,
                           "completed": "response.completed" in events}
after_stream = client.responses.create(model="resp-model", input="more", previous_response_id=final.id)
out["responses_stream"]["follow_up"] = after_stream.previous_response_id == final.id

audio = io.BytesIO(b"RIFF" + b"\0" * 4000)
audio.name = "a.wav"
tr = client.audio.transcriptions.create(model="audio-model", file=audio)
audio.seek(0)
tl = client.audio.translations.create(model="audio-model", file=audio)
out["audio"] = {"transcription": tr.text, "translation": tl.text}

print(json.dumps(out))
