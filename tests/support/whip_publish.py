"""A WHIP publisher on aiortc, for tests/codecs.rs: sends aiortc's own generated video and
audio in the codec asked for (`--video-codec video/H264`), prints one JSON line with the
HTTP status once answered, keeps sending for `--seconds`, then hangs up with DELETE. ICE
stays on the candidates of this host: no STUN server is ever asked."""

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack


def request(url, method, body=b"", content_type="application/sdp"):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers


async def publish(args):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    wanted = [
        c
        for c in RTCRtpSender.getCapabilities("video").codecs
        if c.mimeType.lower() == args.video_codec.lower()
    ]
    if not wanted:
        print(json.dumps({"error": f"aiortc cannot send {args.video_codec}"}), flush=True)
        return
    video.setCodecPreferences(wanted)
    await pc.setLocalDescription(await pc.createOffer())
    loop = asyncio.get_running_loop()
    status, body, headers = await loop.run_in_executor(
        None, request, args.url, "POST", pc.localDescription.sdp.encode()
    )
    if status != 201:
        print(json.dumps({"status": status, "error": body.strip()}), flush=True)
        await pc.close()
        return
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    location = urllib.parse.urljoin(args.url, headers.get("Location", ""))
    print(json.dumps({"status": status, "location": location}), flush=True)
    await asyncio.sleep(args.seconds)
    await loop.run_in_executor(None, request, location, "DELETE")
    await pc.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--video-codec", default="video/VP8")
    parser.add_argument("--seconds", type=float, default=30)
    asyncio.run(publish(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
