// Node `ws` as an independent client of examples/notify_server.
//
//   node notify_client.js ws://127.0.0.1:PORT/ws
//
// Subscribes with a token in the query, publishes 200 messages from a second connection that
// authenticates with a header, and checks that they arrive once each, in order, with the
// pinned-down wire format. Prints OK and exits 0, or prints the failure and exits 1.
const WebSocket = require("ws");

const url = process.argv[2];
const N = 200;

function fail(why) {
  console.log("FAIL " + why);
  process.exit(1);
}
setTimeout(() => fail("timed out"), 20000).unref();

const sub = new WebSocket(url + "?token=s1");
sub.on("error", (e) => fail("subscriber: " + e.message));
sub.on("open", () => sub.send(JSON.stringify({ op: "subscribe", channel: "node" })));

let epoch = null;
let next = 1;
sub.on("message", (raw) => {
  const m = JSON.parse(raw.toString());
  if (m.op === "subscribed") {
    if (m.offset !== 0 || m.recovered !== false) fail("subscribed: " + raw);
    epoch = m.epoch;
    publish();
    return;
  }
  if (m.op !== "message") fail("unexpected " + raw);
  if (m.epoch !== epoch || m.offset !== next || m.from !== "bob" || m.data.n !== next) {
    fail(`expected offset ${next}, got ${raw}`);
  }
  next += 1;
  if (next > N) {
    console.log("OK");
    process.exit(0);
  }
});

function publish() {
  const pub = new WebSocket(url, { headers: { Authorization: "Bearer s2" } });
  pub.on("error", (e) => fail("publisher: " + e.message));
  pub.on("open", () => {
    for (let n = 1; n <= N; n++) {
      pub.send(JSON.stringify({ op: "publish", channel: "node", data: { n } }));
    }
  });
}

// A wrong token is refused before the upgrade.
const bad = new WebSocket(url + "?token=wrong");
bad.on("unexpected-response", (_req, res) => {
  if (res.statusCode !== 401) fail("wrong token got " + res.statusCode);
});
bad.on("open", () => fail("wrong token was accepted"));
bad.on("error", () => {});
