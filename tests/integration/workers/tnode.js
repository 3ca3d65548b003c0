// A test worker in plain Node.js for corral's "ipc": "node" dialect
// (tests/integration/test_node.py). No module: what a Node user would write.
//
// HTTP: GET / answers with X-Worker: SLOT; GET /slow waits for a "release"
// message (or 20 s). Messages (data) from ctl or another worker:
//   {"echo": X}            -> to the master: {"slot", "from", "echo": X}
//   {"tell": TO, "echo": X} -> {"type":"message","to":TO,"data":{"echo":X}}
//   "release"              -> finish the /slow requests
//   "leave"                -> STOPPING=1 over the channel, exit 1.5 s later
// READY=1 goes over the channel after READY_DELAY_MS (default 0).
'use strict';
const http = require('http');

const slot = Number(process.env.CORRAL_WORKER_ID);
const slow = [];

const server = http.createServer((req, res) => {
  res.setHeader('X-Worker', String(slot));
  if (req.url === '/slow') {
    const done = () => res.end('slow ' + slot + '\n');
    slow.push(done);
    setTimeout(done, 20000).unref();
    return;
  }
  res.end(String(slot) + '\n');
});

server.on('connection', (socket) => {
  if (socket.handed) socket.on('close', () => process.send({ type: 'closed', n: 1 }));
});

process.on('message', (msg, socket) => {
  if (msg.type === 'connection' && socket) {
    socket.handed = true;
    server.emit('connection', socket);
    return;
  }
  if (msg.type !== 'message') return;
  const d = msg.data;
  if (d === 'release') {
    slow.splice(0).forEach((f) => f());
  } else if (d === 'leave') {
    process.send({ type: 'notify', text: 'STOPPING=1' });
    setTimeout(() => process.exit(0), 1500);
  } else if (d && d.tell !== undefined) {
    process.send({ type: 'message', to: d.tell, data: { echo: d.echo } });
  } else if (d && d.echo !== undefined) {
    process.send({ type: 'message', data: { slot, from: msg.from, echo: d.echo } });
  }
});

function ready() {
  setTimeout(() => process.send({ type: 'notify', text: 'READY=1\nSTATUS=node worker ' + slot }),
    Number(process.env.READY_DELAY_MS) || 0);
}
if (process.env.LISTEN_FDS) server.listen({ fd: 3 }, ready);
else ready();
