// Node's `eventsource` package (npm) as a test client.
//
//   node eventsource_client.mjs URL COUNT [TYPE ...]
//
// Prints one JSON line per thing the EventSource reports: {"open": true} when
// the stream opens, then {"type", "data", "lastEventId"} for each event of
// type "message" or one of the TYPEs, and exits after COUNT events.  On an
// error it prints {"error": ..., "readyState": ...}; a closed source exits 1.
import { EventSource } from "eventsource";

const [url, count, ...types] = process.argv.slice(2);
const wanted = Number(count);
const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");
let received = 0;

const source = new EventSource(url);
source.onopen = () => print({ open: true });
source.onerror = (error) => {
  print({ error: String(error.message || error.type), readyState: source.readyState });
  if (source.readyState === EventSource.CLOSED) process.exit(1);
};
const report = (event) => {
  print({ type: event.type, data: event.data, lastEventId: event.lastEventId });
  received += 1;
  if (received >= wanted) {
    source.close();
    process.exit(0);
  }
};
for (const type of new Set(["message", ...types])) source.addEventListener(type, report);
