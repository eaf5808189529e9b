// One SIP Outbound device (one +sip.instance) with one SIP.js UserAgent per flow:
// flow n registers over its own WebSocket with reg-id n (RFC 5626 §4.2, RFC 7118).
// Incoming INVITEs are answered at once with a fixed SDP (no media: only
// 200/ACK/BYE matter), with X-Who: flow<n> so the caller sees which flow answered.
import { Registerer, RegistererState, SessionState, UserAgent } from "./node_modules/sip.js/lib/index.js";

const ANSWER_SDP = [
  "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
  "m=audio 9 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "a=inactive", "",
].join("\r\n");

// A SessionDescriptionHandler without media: takes any offer, answers ANSWER_SDP.
function sdhFactory() {
  return {
    close() {},
    getDescription() { return Promise.resolve({ body: ANSWER_SDP, contentType: "application/sdp" }); },
    hasDescription(contentType) { return contentType === "application/sdp"; },
    setDescription() { return Promise.resolve(); },
    rollbackDescription() { return Promise.resolve(); },
    sendDtmf() { return false; },
  };
}

function log(text) {
  console.log(text);
  document.getElementById("log").textContent += text + "\n";
}

const flows = {};   // reg-id -> {ua, registerer, state}
const calls = [];   // {flow, callId, state}

async function register({ regId, server, aor, user, password, instanceId }) {
  const ua = new UserAgent({
    uri: UserAgent.makeURI(aor),
    authorizationUsername: user,
    authorizationPassword: password,
    instanceId,
    transportOptions: { server, traceSip: true },
    sessionDescriptionHandlerFactory: sdhFactory,
    logLevel: "log",
    logConfiguration: false,
    delegate: {
      onInvite(invitation) {
        const call = { flow: regId, callId: invitation.request.callId, state: "incoming" };
        calls.push(call);
        log(`flow ${regId}: INVITE ${call.callId}`);
        invitation.stateChange.addListener((s) => { call.state = s; log(`flow ${regId}: call ${call.callId} ${s}`); });
        invitation.accept({ extraHeaders: [`X-Who: flow${regId}`] }).catch((e) => log(`accept failed: ${e}`));
      },
      onDisconnect(error) { flows[regId].state = "disconnected"; log(`flow ${regId}: disconnected ${error || ""}`); },
    },
  });
  const registerer = new Registerer(ua, { regId, instanceId });
  flows[regId] = { ua, registerer, state: "starting" };
  const registered = new Promise((resolve, reject) => {
    registerer.stateChange.addListener((s) => {
      log(`flow ${regId}: registerer ${s}`);
      if (s === RegistererState.Registered) { flows[regId].state = "registered"; resolve("registered"); }
    });
    setTimeout(() => reject(new Error(`flow ${regId}: not registered in 10 s`)), 10000);
  });
  await ua.start();
  await registerer.register({
    requestDelegate: { onReject(response) { log(`flow ${regId}: REGISTER ${response.message.statusCode}`); } },
  });
  return registered;
}

// Cut a flow the way a browser loses it: its WebSocket closes (no un-REGISTER).
async function cut(regId) {
  await flows[regId].ua.transport.disconnect();
  flows[regId].state = "cut";
  return flows[regId].ua.transport.state;
}

function state() {
  return {
    flows: Object.fromEntries(Object.entries(flows).map(([k, f]) => [k, f.state])),
    calls: calls.map((c) => ({ ...c })),
    terminated: calls.filter((c) => c.state === SessionState.Terminated).length,
  };
}

// A bare WebSocket handshake from this page (the browser sets Origin): "open" or "refused".
function probe(server) {
  return new Promise((resolve) => {
    const ws = new WebSocket(server, "sip");
    ws.onopen = () => { ws.close(); resolve("open"); };
    ws.onerror = () => resolve("refused");
    setTimeout(() => { ws.close(); resolve("timeout"); }, 5000);
  });
}

window.ko = { register, cut, state, probe, ready: true };
log("device page loaded");
