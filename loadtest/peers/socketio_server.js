'use strict';
// Reference fan-out server with Socket.IO, as its docs show rooms:
// `socket.join(room)` and `io.to(room).emit(...)`. With --redis URL it uses
// @socket.io/redis-adapter (pub and sub clients from `redis`), so several
// processes share rooms; --prefix sets the adapter's key (channel prefix).
//
// Events (loadtest/peers/README.md):
//   emit("join", room, ack)                                  -> ack()
//   emit("send", {room, conversation_id, seq, text}, ack)    -> io.to(room).emit("message.new",
//                                                               {conversation_id, seq, text}); ack()
// Prints {"event":"listening","port":P} on stderr once listening.

const { createServer } = require('http');
const { Server } = require('socket.io');

function option(name) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function main() {
  const host = process.env.HOST || '127.0.0.1';
  const port = Number(process.env.PORT || 0);
  const httpServer = createServer();
  const io = new Server(httpServer, {
    transports: ['websocket'],
    perMessageDeflate: false,
    serveClient: false,
  });

  const redisUrl = option('--redis');
  if (redisUrl) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pubClient = createClient({ url: redisUrl });
    const subClient = pubClient.duplicate();
    pubClient.on('error', (err) => console.error(JSON.stringify({ event: 'redis_error', error: String(err) })));
    subClient.on('error', (err) => console.error(JSON.stringify({ event: 'redis_error', error: String(err) })));
    await Promise.all([pubClient.connect(), subClient.connect()]);
    io.adapter(createAdapter(pubClient, subClient, { key: option('--prefix') || 'socket.io' }));
  }

  io.on('connection', (socket) => {
    socket.on('join', (room, ack) => {
      socket.join(room);
      if (typeof ack === 'function') ack();
    });
    socket.on('send', (msg, ack) => {
      io.to(msg.room).emit('message.new', { conversation_id: msg.conversation_id, seq: msg.seq, text: msg.text });
      if (typeof ack === 'function') ack();
    });
  });

  httpServer.listen(port, host, () => {
    console.error(JSON.stringify({ event: 'listening', port: httpServer.address().port }));
  });
}

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
main().catch((err) => {
  console.error(JSON.stringify({ event: 'startup_failed', error: String(err) }));
  process.exit(1);
});
