'use strict';
// Reference fan-out server with the `ws` library, written the way its README
// broadcasts: rooms are Sets of sockets in a Map, and a message is sent to
// each member with `client.send(data, { binary: false })`.
//
// Protocol (loadtest/peers/README.md), JSON text frames:
//   {"type":"join","id":N,"room":"R"}              -> {"type":"result","id":N}
//   {"type":"send","id":N,"room":"R","conversation_id":C,"seq":S,"text":"T"}
//     -> every member of R: {"type":"message.new","message":{"conversation_id":C,"seq":S,"text":"T"}}
//     -> then the sender:   {"type":"result","id":N}
// Prints {"event":"listening","port":P} on stderr once listening.

const { WebSocketServer, WebSocket } = require('ws');

const host = process.env.HOST || '127.0.0.1';
const port = Number(process.env.PORT || 0);
const wss = new WebSocketServer({ host, port, perMessageDeflate: false });
const rooms = new Map(); // room name -> Set<WebSocket>

wss.on('connection', (ws) => {
  const joined = new Set();
  ws.on('error', () => {});
  ws.on('message', (data) => {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.type === 'join') {
      let members = rooms.get(msg.room);
      if (!members) rooms.set(msg.room, (members = new Set()));
      members.add(ws);
      joined.add(msg.room);
      ws.send(JSON.stringify({ type: 'result', id: msg.id }));
    } else if (msg.type === 'send') {
      const out = Buffer.from(
        JSON.stringify({
          type: 'message.new',
          message: { conversation_id: msg.conversation_id, seq: msg.seq, text: msg.text },
        })
      );
      const members = rooms.get(msg.room);
      if (members) {
        for (const client of members) {
          if (client.readyState === WebSocket.OPEN) client.send(out, { binary: false });
        }
      }
      ws.send(JSON.stringify({ type: 'result', id: msg.id }));
    }
  });
  ws.on('close', () => {
    for (const room of joined) {
      const members = rooms.get(room);
      if (members) {
        members.delete(ws);
        if (members.size === 0) rooms.delete(room);
      }
    }
  });
});

wss.on('listening', () => {
  console.error(JSON.stringify({ event: 'listening', port: wss.address().port }));
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
