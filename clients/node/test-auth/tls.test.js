'use strict';
// The Node.js client against a daemon on a TLS listener with bearer tokens.
// tests/auth/test_node.py starts the daemon and runs `node --test test-auth/` with:
//   RUSTAID_TLS_ADDRESS   127.0.0.1:PORT of the TLS listener
//   RUSTAID_TLS_CA        PEM file of the CA that signed the daemon's certificate
//   RUSTAID_TLS_TOKEN     a valid (non-admin) token
// Without them every test is skipped.

const assert = require('node:assert/strict');
const { describe, test } = require('node:test');

const rustaid = require('../rustaid');

const ADDRESS = process.env.RUSTAID_TLS_ADDRESS || '';
const CA = process.env.RUSTAID_TLS_CA || '';
const TOKEN = process.env.RUSTAID_TLS_TOKEN || '';
const SKIP = ADDRESS && CA && TOKEN ? false : 'RUSTAID_TLS_ADDRESS/CA/TOKEN are not set';

function listModels(client) {
  const deadline = new Date(Date.now() + 30_000);
  return new Promise((resolve, reject) => {
    client.models.listModels({}, { deadline }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

describe('Node.js client over TLS with a token', { skip: SKIP }, () => {
  test('a valid token lists the models', async () => {
    const client = rustaid.connect(ADDRESS, { tls: { ca: CA }, token: TOKEN });
    try {
      const res = await listModels(client);
      assert.ok(res.models.some((m) => m.id === 'tiny'), JSON.stringify(res.models));
    } finally {
      client.close();
    }
  });

  test('without a token the daemon answers UNAUTHENTICATED', async () => {
    const client = rustaid.connect(ADDRESS, { tls: { ca: CA }, token: '' });
    try {
      await assert.rejects(listModels(client), (err) => {
        assert.equal(rustaid.statusName(err.code), 'UNAUTHENTICATED', err.details);
        assert.match(err.details, /rustaid token add/);
        return true;
      });
    } finally {
      client.close();
    }
  });

  test('a token is never sent in the clear to another host', () => {
    assert.throws(
      () => rustaid.connect('192.0.2.1:50051', { token: 'rai_x' }),
      /refusing to send a token without TLS/,
    );
  });
});
