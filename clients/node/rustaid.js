'use strict';
// A small client for the rustaid daemon, built at run time from the .proto files
// in the repository's proto/ folder (no generated code to keep in step).
//
//   const rustaid = require('./rustaid');
//   const client = rustaid.connect();          // or connect('unix:///run/rustaid/rustaid.sock')
//   client.models.listModels({}, (err, res) => { ... });
//   const call = client.generate.generateStream({ modelId: 'tiny', prompt: 'Hi' });
//   call.on('data', (msg) => { ... });
//   client.close();

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// proto/ at the repository root, found relative to this file.
const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const PROTO_FILES = ['rustaid/api/v1/models.proto', 'rustaid/api/v1/generate.proto'];

const LOADER_OPTIONS = {
  keepCase: false, // fields in lowerCamelCase: modelId, finishReason, ...
  longs: String, // uint64/int64 as decimal strings (no precision loss)
  enums: String, // enum values by name, e.g. 'FINISH_REASON_STOP'
  defaults: true, // unset scalar fields appear with their default value
  oneofs: true, // a oneof's set member is named in a virtual field, e.g. msg.event
  includeDirs: [PROTO_ROOT],
};

let cachedPackage = null;

/** The loaded `rustaid.api.v1` package (service constructors and message types). */
function loadPackage() {
  if (cachedPackage === null) {
    const definition = protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
    cachedPackage = grpc.loadPackageDefinition(definition).rustaid.api.v1;
  }
  return cachedPackage;
}

/**
 * The address used when none is given: $RUSTAID_ADDRESS, else the user daemon's
 * socket in $XDG_RUNTIME_DIR, else the system service's socket.
 */
function defaultAddress(env = process.env) {
  if (env.RUSTAID_ADDRESS) {
    return env.RUSTAID_ADDRESS;
  }
  if (env.XDG_RUNTIME_DIR) {
    return `unix://${path.join(env.XDG_RUNTIME_DIR, 'rustaid', 'rustaid.sock')}`;
  }
  return 'unix:///run/rustaid/rustaid.sock';
}

/** 'NOT_FOUND' for grpc.status.NOT_FOUND (5), and so on. */
function statusName(code) {
  const entry = Object.entries(grpc.status).find(([, value]) => value === code);
  return entry ? entry[0] : `UNKNOWN_STATUS_${code}`;
}

/** Reads a PEM file given by path (or returns a Buffer as it is). */
function pem(value) {
  return Buffer.isBuffer(value) ? value : fs.readFileSync(value);
}

function isLoopback(address) {
  if (address.startsWith('unix:')) return true;
  const target = address.replace(/^(dns:\/\/\/|ipv4:|ipv6:)/, '');
  const host = target.includes(':') ? target.slice(0, target.lastIndexOf(':')) : target;
  const bare = host.replace(/^\[|\]$/g, '');
  return bare === 'localhost' || bare === '::1' || bare.startsWith('127.');
}

/** Adds `authorization: Bearer TOKEN` to every call. */
function bearerInterceptor(token) {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

/**
 * Channel credentials from options.tls ({ ca, cert, key }: PEM paths or Buffers; ca
 * defaults to the system's CAs, cert and key are for daemons that require client
 * certificates). Without options.tls: plaintext (Unix sockets, loopback).
 */
function channelCredentials(address, options) {
  if (!options.tls) return grpc.credentials.createInsecure();
  const { ca, cert, key } = options.tls === true ? {} : options.tls;
  if (Boolean(cert) !== Boolean(key)) {
    throw new Error('a client certificate needs both tls.cert and tls.key');
  }
  return grpc.credentials.createSsl(
    ca ? pem(ca) : null,
    key ? pem(key) : null,
    cert ? pem(cert) : null,
  );
}

/**
 * Connects to the daemon. Returns { address, models, generate, close() } where
 * `models` is a ModelsService client and `generate` a GenerateService client.
 * Channels connect lazily, on the first call.
 *
 * options: credentials (grpc ChannelCredentials, overrides tls), tls (see
 * channelCredentials), token (bearer token for TCP listeners; default
 * $RUSTAID_TOKEN; never sent without TLS to a host other than this one),
 * channelOptions.
 */
function connect(address = defaultAddress(), options = {}) {
  const pkg = loadPackage();
  const credentials = options.credentials || channelCredentials(address, options);
  const channelOptions = { ...(options.channelOptions || {}) };
  const token = options.token || process.env.RUSTAID_TOKEN || '';
  if (token) {
    if (!options.tls && !options.credentials && !isLoopback(address)) {
      throw new Error(`refusing to send a token without TLS to ${address}: pass options.tls`);
    }
    channelOptions.interceptors = [...(channelOptions.interceptors || []), bearerInterceptor(token)];
  }
  const models = new pkg.ModelsService(address, credentials, channelOptions);
  const generate = new pkg.GenerateService(address, credentials, channelOptions);
  return {
    address,
    models,
    generate,
    close() {
      models.close();
      generate.close();
    },
  };
}

module.exports = {
  PROTO_ROOT,
  PROTO_FILES,
  LOADER_OPTIONS,
  connect,
  defaultAddress,
  loadPackage,
  statusName,
  grpc,
};
