#!/usr/bin/env node
/*
 * A JsSIP user agent in Node.js, driven by tests/integration/test_jssip.py against callpath's
 * SIP over WebSocket endpoint (RFC 7118).
 *
 * JsSIP is the SIP stack agents' browser pages use. Node has what JsSIP needs of a browser except
 * WebSocket and WebRTC:
 *   - WebSocket: Node 20 has no global WebSocket without --experimental-websocket; the `ws` package
 *     is installed next to JsSIP and set as the global (a native one is used when present).
 *   - WebRTC: JsSIP refuses INVITEs (488) unless `window.RTCPeerConnection` exists. A stand-in
 *     peer connection below answers/offers a hand-built plain-RTP SDP (PCMU + telephone-event) and
 *     reports ICE gathering complete at once; no media flows (the media bridge is a separate issue).
 *
 * Usage:
 *   node jssip_agent.js --ws ws://127.0.0.1:8088/ws --uri sip:alice@127.0.0.1 --password secret
 *        [--on-invite reject|answer] [--reject-code 486] [--call TARGET] [--hangup-after MS]
 *        [--register-expires S] [--debug]
 *
 * Prints one JSON object per line on stdout, each with an "event" key:
 *   start, connected, disconnected, registered, unregistered, registrationFailed,
 *   incoming (from_user, from, ruri, to, call_id), outgoing, progress, accepted, confirmed,
 *   ended / failed (originator, cause, status), error.
 * SIGTERM/SIGINT: unregister, disconnect, exit 0.
 */
'use strict';

const path = require('path');

function parseArgs(argv) {
  const opts = {
    ws: null, uri: null, password: null, onInvite: 'reject', rejectCode: 486, call: null,
    hangupAfter: 500, registerExpires: 600, debug: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    switch (arg) {
      case '--ws': opts.ws = next(); break;
      case '--uri': opts.uri = next(); break;
      case '--password': opts.password = next(); break;
      case '--on-invite': opts.onInvite = next(); break;
      case '--reject-code': opts.rejectCode = parseInt(next(), 10); break;
      case '--call': opts.call = next(); break;
      case '--hangup-after': opts.hangupAfter = parseInt(next(), 10); break;
      case '--register-expires': opts.registerExpires = parseInt(next(), 10); break;
      case '--debug': opts.debug = true; break;
      default: throw new Error(`unknown argument ${arg}`);
    }
  }
  if (!opts.ws || !opts.uri || opts.password === null) {
    throw new Error('--ws, --uri and --password are required');
  }
  if (!['reject', 'answer'].includes(opts.onInvite)) {
    throw new Error('--on-invite is reject or answer');
  }
  return opts;
}

function emit(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, t: Date.now() / 1000, ...fields })}\n`);
}

// ----------------------------------------------------------------------------- browser stand-ins

let websocketImpl = 'native';
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = require('ws');
  websocketImpl = 'ws';
}

/** A plain-RTP audio SDP: the answer keeps the offer's PCMU/PCMA and telephone-event payloads. */
function buildSdp(offerSdp) {
  let payloads = ['0', '101'];
  let telephoneEvent = '101';
  if (offerSdp) {
    const mline = offerSdp.split(/\r?\n/).find((l) => l.startsWith('m=audio '));
    const offered = mline ? mline.trim().split(/\s+/).slice(3) : [];
    const te = offerSdp.match(/a=rtpmap:(\d+) telephone-event\/8000/i);
    telephoneEvent = te ? te[1] : null;
    payloads = offered.filter((pt) => pt === '0' || pt === '8' || pt === telephoneEvent);
    if (!payloads.some((pt) => pt === '0' || pt === '8')) payloads.unshift('0');
  }
  const lines = [
    'v=0',
    `o=jssip-agent ${Date.now()} 1 IN IP4 127.0.0.1`,
    's=-',
    'c=IN IP4 127.0.0.1',
    't=0 0',
    `m=audio 40002 RTP/AVP ${payloads.join(' ')}`,
  ];
  for (const pt of payloads) {
    if (pt === '0') lines.push('a=rtpmap:0 PCMU/8000');
    else if (pt === '8') lines.push('a=rtpmap:8 PCMA/8000');
    else lines.push(`a=rtpmap:${pt} telephone-event/8000`, `a=fmtp:${pt} 0-16`);
  }
  lines.push('a=ptime:20', 'a=sendrecv');
  return `${lines.join('\r\n')}\r\n`;
}

class FakeSessionDescription {
  constructor({ type, sdp }) {
    this.type = type;
    this.sdp = sdp;
  }

  toJSON() {
    return { type: this.type, sdp: this.sdp };
  }
}

/** Just enough of RTCPeerConnection for JsSIP's offer/answer: SDP in, hand-built SDP out. */
class FakePeerConnection extends EventTarget {
  constructor() {
    super();
    this.iceGatheringState = 'complete';
    this.iceConnectionState = 'new';
    this.connectionState = 'new';
    this.signalingState = 'stable';
    this.localDescription = null;
    this.remoteDescription = null;
  }

  async createOffer() {
    return new FakeSessionDescription({ type: 'offer', sdp: buildSdp(null) });
  }

  async createAnswer() {
    if (!this.remoteDescription) throw new Error('createAnswer() without a remote offer');
    return new FakeSessionDescription({ type: 'answer', sdp: buildSdp(this.remoteDescription.sdp) });
  }

  async setLocalDescription(desc) {
    this.localDescription = new FakeSessionDescription(desc);
    this.signalingState = desc.type === 'offer' ? 'have-local-offer' : 'stable';
  }

  async setRemoteDescription(desc) {
    this.remoteDescription = new FakeSessionDescription(desc);
    this.signalingState = desc.type === 'offer' ? 'have-remote-offer' : 'stable';
  }

  addTrack() { return {}; }

  removeTrack() {}

  getSenders() { return []; }

  getReceivers() { return []; }

  getLocalStreams() { return []; }

  getRemoteStreams() { return []; }

  close() {
    this.signalingState = 'closed';
    this.connectionState = 'closed';
  }
}

globalThis.window = globalThis;
globalThis.RTCPeerConnection = FakePeerConnection;
globalThis.RTCSessionDescription = FakeSessionDescription;

// ----------------------------------------------------------------------------------------- agent

function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`jssip_agent: ${err.message}\n`);
    process.exit(2);
  }
  const JsSIP = require(path.join(__dirname, 'node_modules', 'jssip'));
  if (opts.debug) JsSIP.debug.enable('JsSIP:*');
  else JsSIP.debug.disable();

  const socket = new JsSIP.WebSocketInterface(opts.ws);
  const ua = new JsSIP.UA({
    sockets: [socket],
    uri: opts.uri,
    password: opts.password,
    register: true,
    register_expires: opts.registerExpires,
    session_timers: false,
    connection_recovery_min_interval: 2,
    connection_recovery_max_interval: 4,
    user_agent: `JsSIP ${JsSIP.version} (callpath jssip_agent, Node ${process.version})`,
  });
  emit('start', {
    jssip: JsSIP.version, node: process.version, websocket: websocketImpl, contact: ua.contact.toString(),
  });

  let called = false;

  ua.on('connected', () => emit('connected', { url: opts.ws }));
  ua.on('disconnected', (e) => emit('disconnected', { code: e && e.code, reason: e && e.reason }));
  ua.on('registered', (e) => {
    emit('registered', {
      status: e.response.status_code,
      contact: ua.contact.toString(),
      contacts: e.response.getHeaders('contact'),
    });
    if (opts.call && !called) {
      called = true;
      placeCall(ua, opts);
    }
  });
  ua.on('unregistered', (e) => emit('unregistered', { status: e && e.response ? e.response.status_code : null }));
  ua.on('registrationFailed', (e) => emit('registrationFailed', {
    cause: e.cause, status: e.response ? e.response.status_code : null,
  }));

  ua.on('newRTCSession', ({ originator, session, request }) => {
    watchSession(session);
    if (originator !== 'remote') return;
    emit('incoming', {
      call_id: request.call_id,
      from_user: session.remote_identity.uri.user,
      from: request.from.toString(),
      to: request.to.toString(),
      ruri: request.ruri.toString(),
      via: request.getHeaders('via'),
      record_route: request.getHeaders('record-route'),
    });
    if (opts.onInvite === 'reject') {
      // rejected inside the event: JsSIP sends the final response instead of 180
      session.terminate({ status_code: opts.rejectCode });
    } else {
      setTimeout(() => {
        try {
          session.answer({ mediaConstraints: { audio: false, video: false } });
        } catch (err) {
          emit('error', { where: 'answer', message: String(err && err.message) });
        }
      }, 100);
    }
  });

  const stop = () => {
    emit('stopping');
    const quit = setTimeout(() => process.exit(0), 1500);
    ua.once('disconnected', () => {
      clearTimeout(quit);
      process.exit(0);
    });
    try {
      ua.stop();
    } catch (err) {
      process.exit(0);
    }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('uncaughtException', (err) => {
    emit('error', { where: 'uncaught', message: String(err && err.stack) });
    process.exit(1);
  });

  ua.start();
}

function watchSession(session) {
  const callId = () => (session._request ? session._request.call_id : null);
  session.on('progress', (e) => emit('progress', {
    originator: e.originator, status: e.response ? e.response.status_code : null, call_id: callId(),
  }));
  session.on('accepted', (e) => emit('accepted', { originator: e.originator, call_id: callId() }));
  session.on('confirmed', (e) => emit('confirmed', { originator: e.originator, call_id: callId() }));
  session.on('ended', (e) => emit('ended', { originator: e.originator, cause: e.cause, call_id: callId() }));
  session.on('failed', (e) => emit('failed', {
    originator: e.originator,
    cause: e.cause,
    status: e.message && e.message.status_code ? e.message.status_code : null,
    call_id: callId(),
  }));
}

function placeCall(ua, opts) {
  let session;
  try {
    session = ua.call(opts.call, {
      mediaConstraints: { audio: false, video: false },
      rtcOfferConstraints: { offerToReceiveAudio: true },
    });
  } catch (err) {
    emit('error', { where: 'call', message: String(err && err.message) });
    return;
  }
  emit('outgoing', { target: opts.call, call_id: session._request ? session._request.call_id : null });
  session.on('confirmed', () => {
    setTimeout(() => {
      if (!session.isEnded()) session.terminate();
    }, opts.hangupAfter);
  });
}

main();
