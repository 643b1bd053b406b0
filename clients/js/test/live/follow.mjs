// Follows a real tagstream for examples/client_test.go: one line per event
// the subscriber receives ("invalidate <tags>", "reset", "ready <resumed>"),
// starting from the cursor given as the second argument.
import { Tagstream } from '../../src/index.js';

const [url, lastEventId] = process.argv.slice(2);
const stream = new Tagstream({ url, lastEventId, storage: null, backoff: { initialMs: 50, maxMs: 300 } });
stream.subscribe(['todos', 'todo:*'], (e) => {
  if (e.type === 'invalidate') console.log(`invalidate ${e.tags.join(',')}`);
  else if (e.type === 'reset') console.log('reset');
  else console.log(`ready ${e.resumed}`);
});
