"""A WHIP publisher on GStreamer's webrtcbin (Debian's python3-gi), for tests/codecs.rs:
test patterns encoded by GStreamer's own encoders in the codec asked for, offered once ICE
gathering is complete, answered over HTTP; prints one JSON line with the HTTP status, keeps
sending for `--seconds`, then hangs up with DELETE. No STUN server is configured."""

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

VIDEO = "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert ! queue ! "
ENCODERS = {
    "VP8": "vp8enc deadline=1 cpu-used=8 keyframe-max-dist=30 ! rtpvp8pay pt=96 ! application/x-rtp,media=video,encoding-name=VP8,payload=96",
    "VP9": "vp9enc deadline=1 cpu-used=8 threads=2 keyframe-max-dist=30 ! rtpvp9pay pt=98 ! application/x-rtp,media=video,encoding-name=VP9,payload=98",
    "H264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! video/x-h264,profile=constrained-baseline ! rtph264pay pt=102 config-interval=-1 aggregate-mode=zero-latency ! application/x-rtp,media=video,encoding-name=H264,payload=102",
    "H264-high": "x264enc tune=zerolatency speed-preset=superfast key-int-max=30 ! video/x-h264,profile=high ! rtph264pay pt=102 config-interval=-1 aggregate-mode=zero-latency ! application/x-rtp,media=video,encoding-name=H264,payload=102",
}
AUDIO = "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! queue ! opusenc ! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111"


def request(url, method, body=b""):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/sdp"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--video", default="VP8", choices=sorted(ENCODERS))
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f"webrtcbin name=webrtc bundle-policy=max-bundle "
        f"{VIDEO}{ENCODERS[args.video]} ! webrtc. {AUDIO} ! webrtc."
    )
    webrtc = pipeline.get_by_name("webrtc")
    # Host candidates on loopback only (libnice otherwise gathers every interface but lo).
    loopback = Nice.Address.new()
    loopback.set_from_string("127.0.0.1")
    # (The references are kept: pygobject would otherwise drop one webrtcbin still uses.)
    ice = webrtc.get_property("ice-agent")
    agent = ice.get_property("agent")
    agent.add_local_address(loopback)
    # No UPnP port mapping: libnice would otherwise search for a gateway by SSDP multicast
    # (239.255.255.250:1900), traffic a test must never send beyond loopback.
    agent.set_property("upnp", False)
    loop = GLib.MainLoop()
    state = {"location": None, "sent": False}

    def finish(result):
        print(json.dumps(result), flush=True)

    def send_offer():
        if state["sent"]:
            return
        state["sent"] = True
        offer = webrtc.get_property("local-description").sdp.as_text()
        status, body, headers = request(args.url, "POST", offer.encode())
        if status != 201:
            finish({"status": status, "error": body.strip()})
            loop.quit()
            return
        _, sdp = GstSdp.SDPMessage.new_from_text(body)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        state["location"] = urllib.parse.urljoin(args.url, headers.get("Location", ""))
        finish({"status": status, "location": state["location"], "offer_fmtp": [
            line for line in offer.splitlines() if line.startswith("a=fmtp:")]})
        GLib.timeout_add(int(args.seconds * 1000), loop.quit)

    def on_gathering(element, _):
        if element.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(send_offer)

    def on_offer(promise, _):
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None and reply.has_field("offer") else None
        if offer is None:
            # Asked before every pad had its caps: ask again shortly, a bounded number of times.
            print(f"no offer yet: {reply.to_string() if reply else None}", file=sys.stderr)
            state["tries"] = state.get("tries", 0) + 1
            if state["tries"] < 20:
                GLib.timeout_add(250, lambda: ask_offer(webrtc) and False)
            return
        webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def on_negotiation_needed(element):
        for index in range(2):
            transceiver = element.emit("get-transceiver", index)
            if transceiver is not None:
                transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        ask_offer(element)

    def ask_offer(element):
        element.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer, None))

    webrtc.connect("on-negotiation-needed", on_negotiation_needed)
    webrtc.connect("notify::ice-gathering-state", on_gathering)
    pipeline.set_state(Gst.State.PLAYING)
    GLib.timeout_add(int((args.seconds + 20) * 1000), loop.quit)
    loop.run()
    if state["location"]:
        request(state["location"], "DELETE")
    pipeline.set_state(Gst.State.NULL)
    # Leave without running finalizers on the borrowed ICE objects above.
    sys.stdout.flush()
    os._exit(0 if state["location"] else 1)


if __name__ == "__main__":
    sys.exit(main())
