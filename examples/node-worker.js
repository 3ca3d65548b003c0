#!/usr/bin/env node
// A corral worker in plain Node.js, no npm module. Run it with "ipc": "node"
// (corrald --ipc node) in any balance mode; see docs/node.md.
'use strict';
const http = require('http');

const slot = process.env.CORRAL_WORKER_ID;
const maxRequests = Number(process.env.MAX_REQUESTS) || 0;
const open = new Set();
let served = 0;
let leaving = false;

const server = http.createServer((req, res) => {
  if (leaving) res.setHeader('Connection', 'close');
  res.end(`hello from worker ${slot} (pid ${process.pid})\n`);
  if (maxRequests && ++served === maxRequests) leave('served MAX_REQUESTS');
});

// Every connection, accepted here (shared) or handed over (round-robin,
// least-conn). Handed ones are reported closed, for least-conn: one line
// per turn of the event loop, however many closed in it.
let closed = 0;
server.on('connection', (socket) => {
  open.add(socket);
  socket.on('close', () => {
    open.delete(socket);
    if (socket.handed && closed++ === 0) {
      setImmediate(() => { process.send({ type: 'closed', n: closed }); closed = 0; });
    }
    if (leaving && open.size === 0) process.exit(0);
  });
});

process.on('message', (msg, socket) => {
  if (msg.type === 'connection' && socket) {
    // round-robin, least-conn: corral accepted it and hands it to us
    socket.handed = true;
    server.emit('connection', socket);
  } else if (msg.type === 'message') {
    // from `corralctl send` ("ctl") or from another worker (its slot)
    console.log(`worker ${slot}: message from ${msg.from}: ${JSON.stringify(msg.data)}`);
    if (msg.data && msg.data.broadcast) {
      process.send({ type: 'message', to: 'others', data: { hello: `from worker ${slot}` } });
    }
  }
});

// Leave gracefully: finish what is in flight, take no new keep-alive request.
// STOPPING=1 first when we leave on our own, so corral starts our replacement.
function leave(why) {
  if (leaving) return;
  leaving = true;
  console.log(`worker ${slot}: leaving: ${why}`);
  if (why !== 'SIGTERM') process.send({ type: 'notify', text: 'STOPPING=1' });
  if (server.listening) server.close();
  server.closeIdleConnections();
  if (open.size === 0) process.exit(0);
}
process.on('SIGTERM', () => leave('SIGTERM'));

function ready() {
  process.send({ type: 'notify', text: `READY=1\nSTATUS=serving as worker ${slot}` });
}
if (process.env.LISTEN_FDS) {
  server.listen({ fd: 3 }, ready);   // shared: the listening socket is fd 3
} else {
  ready();                           // round-robin, least-conn: connections come as messages
}
