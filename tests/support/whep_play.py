"""A WHEP player on aiortc, for tests/codecs.rs: posts a recvonly offer to the URL given,
decodes what arrives, and prints one JSON line: the HTTP status and, once enough arrived
(or the time is up), the video frames and audio samples it decoded. ICE stays on the
candidates of this host: no STUN server is ever asked."""

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription


def post(url, sdp):
    request = urllib.request.Request(
        url, data=sdp.encode(), headers={"Content-Type": "application/sdp"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def play(args):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    counts = {"video": {"frames": 0, "width": 0}, "audio": {"samples": 0, "rate": 0}}

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            if track.kind == "video":
                counts["video"]["frames"] += 1
                counts["video"]["width"] = frame.width
            else:
                counts["audio"]["samples"] += frame.samples
                counts["audio"]["rate"] = frame.sample_rate

    tasks = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    for kind in ("video", "audio"):
        pc.addTransceiver(kind, direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    status, body = await asyncio.get_running_loop().run_in_executor(
        None, post, args.url, pc.localDescription.sdp
    )
    result = {"status": status}
    if status != 201:
        result["error"] = body.strip()
    else:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            video_done = counts["video"]["frames"] >= args.frames or not args.frames
            audio_done = counts["audio"]["samples"] >= args.samples or not args.samples
            if video_done and audio_done:
                break
            await asyncio.sleep(0.1)
        result.update(counts)
    for task in tasks:
        task.cancel()
    await pc.close()
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--samples", type=int, default=48000)
    parser.add_argument("--seconds", type=float, default=15)
    asyncio.run(play(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
