"""The journal directory and the secret files, as another local user (or a mistake) would attack
them: a journal directory or anything in it writable by others or owned by another user, a
directory above it others can change, `/` and system directories as `journal.dir`, symbolic links
planted where zspark keeps its segments, lock, cursors, dead letters and state (pointing at a
victim file that must stay untouched), a directory swapped for a link while the journal is open,
and token, key and authorized-key files others can read or change.

zspark refuses what is unsafe with a startup error (`zcmd serve` exits 3) or a config error
(exit 2, `zcmd validate` too) naming the config key, the path, what is wrong and how to fix it.
Several cases need root (to chown a file to another user); they say so when skipped.
"""
import datetime
import os
import shutil
import stat
import subprocess
import time
import unittest

from tests.support import ServeProcess, TempDir, config_data, request, write_config, write_journal, zcmd
from zspark.forwarder import _append_lines
from zspark.journal import Cursor, Journal, JournalError, Reader, files

OTHER_UID = 65534  # nobody
OTHER_GID = 65534  # nogroup: nobody's group
IS_ROOT = os.geteuid() == 0
NEEDS_ROOT = "needs root: only root can give a file to another user (os.chown) to play that user"
SEGMENT = "00000000000000000000.log"


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def events(*types):
    when = datetime.datetime(2026, 5, 1, tzinfo=datetime.timezone.utc)
    return [{"type": t, "timestamp": when, "node": "test"} for t in types]


class FilesCase(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.addCleanup(self.tmp.remove)
        self.journal = self.tmp.join("journal")

    def config(self, **sections):
        data = config_data(self.tmp.path, **sections)
        self.port = data["http"]["port"]
        return write_config(self.tmp.path, data)

    def make_journal(self):
        os.mkdir(self.journal, 0o700)
        return self.journal

    def victim(self, content=b"a file zspark must never write\n" * 4):
        """A file outside the journal that a planted link points at; see assertUntouched."""
        path = self.tmp.join("victim")
        with open(path, "wb") as f:
            f.write(content)
        return path

    def assertUntouched(self, victim, content=None):
        with open(victim, "rb") as f:
            data = f.read()
        expected = content if content is not None else b"a file zspark must never write\n" * 4
        self.assertEqual((len(data), data), (len(expected), expected), f"{victim} was written")

    def assertRefusedAtStart(self, *expected):
        """`zcmd serve` exits 3 without serving; stderr names journal.dir and every `expected`."""
        result = zcmd("-y", self.config(), "serve", timeout=30)
        self.assertEqual(result.returncode, 3, result.stderr)
        for text in ("journal.dir", "fix:") + expected:
            self.assertIn(text, result.stderr)
        return result.stderr

    def serve(self, **sections):
        server = ServeProcess(self.config(**sections), self.port, self.tmp.join("serve.log")).start()
        self.addCleanup(server.kill)
        return server


class JournalDirectoryModes(FilesCase):
    def test_a_journal_directory_writable_by_others_is_refused(self):
        self.make_journal()
        os.chmod(self.journal, 0o777)
        self.assertRefusedAtStart(self.journal, "writable by group or others", "0777",
                                  f"chmod 700 {self.journal}", "journal.allow_shared_dir")
        self.assertEqual(mode_of(self.journal), 0o777)  # refused, not "fixed" behind the operator's back

    @unittest.skipUnless(IS_ROOT, NEEDS_ROOT)
    def test_a_journal_directory_writable_by_a_shared_group_is_refused(self):
        self.make_journal()
        os.chown(self.journal, -1, OTHER_GID)  # the group of another user
        os.chmod(self.journal, 0o770)
        self.assertRefusedAtStart(self.journal, "writable by group or others")

    def test_group_write_for_the_owners_own_group_is_made_owner_only(self):
        # Debian's and Ubuntu's user private groups: a umask of 002 makes a fresh clone 0775,
        # its journal/ included; nobody but its owner is in that group.
        if not files._private_group(os.getegid(), os.geteuid()):
            self.skipTest("this user's group has other members")
        parent = self.tmp.join("clone")
        os.mkdir(parent)
        os.chmod(parent, 0o775)
        self.journal = os.path.join(parent, "journal")
        os.mkdir(self.journal)
        os.chmod(self.journal, 0o775)
        write_journal(self.journal, events("a"))
        segment = os.path.join(self.journal, SEGMENT)
        os.chmod(segment, 0o664)
        data = config_data(parent)
        server = ServeProcess(write_config(self.tmp.path, data), data["http"]["port"],
                              self.tmp.join("serve.log")).start()
        self.addCleanup(server.kill)
        self.assertEqual((mode_of(self.journal), mode_of(segment)), (0o700, 0o600))
        self.assertIn("owner-only", server.log())

    @unittest.skipUnless(IS_ROOT, NEEDS_ROOT)
    def test_a_journal_directory_owned_by_another_user_is_refused(self):
        self.make_journal()
        os.chown(self.journal, OTHER_UID, -1)
        self.assertRefusedAtStart(self.journal, "is owned by", "chown")

    @unittest.skipUnless(IS_ROOT, NEEDS_ROOT)
    def test_a_file_inside_writable_by_a_shared_group_is_refused_naming_it(self):
        write_journal(self.journal, events("a", "b"))
        segment = os.path.join(self.journal, SEGMENT)
        os.chown(segment, -1, OTHER_GID)
        os.chmod(segment, 0o660)
        self.assertRefusedAtStart(segment, "writable by group or others", f"chmod 600 {segment}")

    def test_a_cursor_directory_writable_by_others_is_refused(self):
        self.make_journal()
        os.mkdir(os.path.join(self.journal, "cursors"))
        os.chmod(os.path.join(self.journal, "cursors"), 0o777)
        self.assertRefusedAtStart(os.path.join(self.journal, "cursors"), "writable by group or others")

    @unittest.skipUnless(IS_ROOT, NEEDS_ROOT)
    def test_a_cursor_file_owned_by_another_user_is_refused(self):
        self.make_journal()
        os.mkdir(os.path.join(self.journal, "cursors"), 0o700)
        cursor = os.path.join(self.journal, "cursors", "kafka")
        with open(cursor, "w") as f:
            f.write("0\n")
        os.chmod(cursor, 0o600)
        os.chown(cursor, OTHER_UID, -1)
        self.assertRefusedAtStart(cursor, "is owned by")

    def test_a_directory_above_the_journal_that_others_can_write_is_refused(self):
        # They could rename the journal away and put a link of their own in its place.
        shared = self.tmp.join("shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)  # no sticky bit
        self.journal = os.path.join(shared, "journal")
        result = zcmd("-y", write_config(self.tmp.path, config_data(shared)), "serve", timeout=30)
        self.assertEqual(result.returncode, 3, result.stderr)
        for text in ("journal.dir", shared, "is above it and writable by group or others", "chmod go-w"):
            self.assertIn(text, result.stderr)

    def test_a_journal_directory_that_is_a_link_is_refused(self):
        real = self.tmp.join("elsewhere")
        os.mkdir(real, 0o700)
        os.symlink(real, self.journal)
        self.assertRefusedAtStart(self.journal, "is a symbolic link", f"set journal.dir to {real}")
        self.assertEqual(os.listdir(real), [])

    def test_allow_shared_dir_accepts_a_shared_directory_on_purpose(self):
        self.make_journal()
        os.chmod(self.journal, 0o777)
        server = self.serve(journal={"allow_shared_dir": True})
        self.assertEqual(request(self.port, "GET", "/log?type=shared")[0], 200)
        self.assertEqual(server.stop(), 0)
        self.assertEqual(mode_of(self.journal), 0o777)  # left as the operator set it
        self.assertIn("journal.allow_shared_dir is true", server.log())

    def test_our_own_journal_readable_by_others_is_made_owner_only(self):
        # A clone's journal/ is 0755 (git does not record directory modes); a copied segment 0644.
        write_journal(self.journal, events("a", "b"))
        os.chmod(self.journal, 0o755)
        segment = os.path.join(self.journal, SEGMENT)
        os.chmod(segment, 0o644)
        os.chmod(os.path.join(self.journal, ".lock"), 0o644)
        server = self.serve()
        self.assertEqual(mode_of(self.journal), 0o700)
        self.assertEqual(mode_of(segment), 0o600)
        self.assertEqual(mode_of(os.path.join(self.journal, ".lock")), 0o600)
        self.assertEqual(server.stop(), 0)
        self.assertIn(f"journal {self.journal}: made {self.journal} owner-only (it was 0755", server.log())

    def test_new_files_are_owner_only_whatever_the_umask(self):
        old = os.umask(0)
        try:
            with Journal(self.journal) as journal:
                journal.append([b"x"])
                journal.cursor("kafka").commit(1)
        finally:
            os.umask(old)
        self.assertEqual(mode_of(self.journal), 0o700)
        for directory, _, names in os.walk(self.journal):
            self.assertEqual(mode_of(directory) & 0o077, 0, directory)
            for name in names:
                self.assertEqual(mode_of(os.path.join(directory, name)) & 0o077, 0, name)


class SystemDirectories(FilesCase):
    def validate(self, journal_dir):
        path = write_config(self.tmp.path, {"journal": {"dir": journal_dir}})
        return zcmd("-y", path, "validate")

    def test_root_and_system_directories_are_refused_by_validate(self):
        link_to_etc = self.tmp.join("etc-link")
        os.symlink("/etc", link_to_etc)
        for journal_dir in ("/", "/etc", "/usr", "/usr/lib/zspark", "/var", "/proc/self", "/root",
                            os.path.expanduser("~"), link_to_etc, "/var/lib/../.."):
            with self.subTest(journal_dir=journal_dir):
                result = self.validate(journal_dir)
                self.assertEqual(result.returncode, 2, result.stdout)
                self.assertIn("journal.dir", result.stderr)
                self.assertIn("system directory", result.stderr)

    def test_a_directory_of_its_own_under_var_lib_is_fine(self):
        result = self.validate("/var/lib/zspark/journal")  # validate creates nothing
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_serve_refuses_a_system_directory_before_touching_it(self):
        # /proc: should this check ever break, nothing can be created there (never `/` as root).
        data = config_data(self.tmp.path, journal={"dir": "/proc/zspark-journal"})
        result = zcmd("-y", write_config(self.tmp.path, data), "serve", timeout=30)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("key 'journal.dir': /proc/zspark-journal is inside the system directory /proc",
                      result.stderr)


class PlantedLinks(FilesCase):
    """A link where zspark keeps a file, pointing at a victim: refused at start, never followed."""

    PLACES = [SEGMENT, ".lock", "cursors/kafka", "cursors/kafka.123.456.tmp", "dead-letter/mongo.jsonl",
              "notices/hours.json", "kafka/topics.json"]

    def test_a_link_anywhere_in_the_journal_is_refused_and_its_target_untouched(self):
        for place in self.PLACES:
            with self.subTest(place=place):
                shutil.rmtree(self.journal, ignore_errors=True)
                self.make_journal()
                victim = self.victim()
                link = os.path.join(self.journal, place)
                os.makedirs(os.path.dirname(link), mode=0o700, exist_ok=True)
                os.symlink(victim, link)
                self.assertRefusedAtStart(link, "is a symbolic link", f"rm {link}")
                self.assertUntouched(victim)
                self.assertTrue(os.path.islink(link))

    def test_a_linked_directory_inside_the_journal_is_refused(self):
        for place in ("cursors", "dead-letter", "notices", "kafka"):
            with self.subTest(place=place):
                shutil.rmtree(self.journal, ignore_errors=True)
                self.make_journal()
                elsewhere = self.tmp.join(f"elsewhere-{place}")
                os.mkdir(elsewhere, 0o700)
                os.symlink(elsewhere, os.path.join(self.journal, place))
                self.assertRefusedAtStart(os.path.join(self.journal, place), "is a symbolic link")
                self.assertEqual(os.listdir(elsewhere), [])

    def test_a_fifo_where_a_state_file_goes_is_refused_not_waited_on(self):
        for place in ("kafka/topics.json", "notices/hours.json", "cursors/kafka"):
            with self.subTest(place=place):
                shutil.rmtree(self.journal, ignore_errors=True)
                self.make_journal()
                fifo = os.path.join(self.journal, place)
                os.makedirs(os.path.dirname(fifo), mode=0o700, exist_ok=True)
                os.mkfifo(fifo, 0o600)
                self.assertRefusedAtStart(fifo, "")

    def test_a_hard_linked_segment_is_refused(self):
        victim = self.victim()
        self.make_journal()
        os.link(victim, os.path.join(self.journal, SEGMENT))
        self.assertRefusedAtStart(os.path.join(self.journal, SEGMENT), "2 hard links")
        self.assertUntouched(victim)

    def test_a_cursor_replaced_by_a_link_while_running_is_not_written_through(self):
        # The victim is a valid cursor file: one that would be written in place if followed.
        with Journal(self.tmp.join("other")) as other:
            other.cursor("kafka").commit(7)
        victim_content = open(self.tmp.join("other", "cursors", "kafka"), "rb").read()
        victim = self.victim(victim_content)
        with Journal(self.journal) as journal:
            cursor = journal.cursor("kafka")
            cursor.commit(1)
            link = os.path.join(self.journal, "cursors", "kafka")
            os.unlink(link)
            os.symlink(victim, link)
            cursor.commit(2)  # written anew in the cursor's own place, never through the link
            self.assertUntouched(victim, victim_content)
            self.assertFalse(os.path.islink(link))
            os.unlink(link)
            os.symlink(victim, link)
            fresh = Cursor(self.journal, "kafka")  # a link found at load: logged, never read through
            self.assertEqual(fresh.offset, 0)
            fresh.commit(3)
        self.assertUntouched(victim, victim_content)
        self.assertFalse(os.path.islink(link))

    def test_a_linked_dead_letter_file_is_an_error_naming_it_and_its_target_untouched(self):
        victim = self.victim()
        self.make_journal()
        os.mkdir(os.path.join(self.journal, "dead-letter"), 0o700)
        link = os.path.join(self.journal, "dead-letter", "mongo.jsonl")
        os.symlink(victim, link)
        with self.assertRaises(OSError) as ctx:
            _append_lines(link, ['{"refused": true}'])
        self.assertIn("symbolic link", str(ctx.exception))
        self.assertIn(link, str(ctx.exception))
        self.assertUntouched(victim)

    def test_a_lock_replaced_by_a_link_is_not_truncated_through(self):
        victim = self.victim()
        self.make_journal()
        os.symlink(victim, os.path.join(self.journal, ".lock"))
        with self.assertRaises(JournalError) as ctx:
            Journal(self.journal).open()
        self.assertIn(os.path.join(self.journal, ".lock"), str(ctx.exception))
        self.assertUntouched(victim)

    def test_readers_do_not_follow_a_linked_segment(self):
        # The victim is another journal's segment, holding an event the reader must not show.
        write_journal(self.tmp.join("private"), events("private-event"))
        victim = self.tmp.join("private", SEGMENT)
        self.make_journal()
        os.symlink(victim, os.path.join(self.journal, SEGMENT))
        with self.assertRaises(OSError):
            list(Reader(self.journal, 0, use_threadpool=False))
        result = zcmd("-y", self.config(), "tail", "--journal", self.journal)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNotIn("private-event", result.stdout)
        self.assertIn(os.path.join(self.journal, SEGMENT), result.stderr)
        result = zcmd("-y", self.config(), "shell", "-c", "print([e['type'] for e in journal.events()])")
        self.assertNotIn("private-event", result.stdout)

    def test_a_journal_directory_swapped_for_a_link_while_open_keeps_its_segments(self):
        # New segments are created relative to the directory opened at start, not its name.
        elsewhere = self.tmp.join("elsewhere")
        os.mkdir(elsewhere, 0o700)
        moved = self.tmp.join("journal.moved")
        with Journal(self.journal, segment_bytes=100) as journal:
            journal.append([b"x" * 200], None)
            os.rename(self.journal, moved)
            os.symlink(elsewhere, self.journal)
            journal.append([b"y" * 200], None)  # rolls to a new segment
            self.assertEqual(journal.apply_retention({}, now=time.time() + 10**9), [0])
        self.assertEqual(os.listdir(elsewhere), [])
        self.assertEqual(sorted(n for n in os.listdir(moved) if n.endswith(".log")),
                         ["00000000000000000001.log"])


class SecretFiles(FilesCase):
    def keygen(self, name, directory):
        result = zcmd("keygen", self.tmp.join(directory), "--name", name)
        self.assertEqual(result.returncode, 0, result.stderr)
        return self.tmp.join(directory, f"{name}.key_secret")

    def secrets(self, mode):
        """A token file, a CURVE secret key and a TLS key, all `mode`; the sections using them."""
        tokens = self.tmp.join("tokens.txt")
        with open(tokens, "w") as f:
            f.write("a-token-for-the-test\n")
        curve = self.keygen("server", "keys")
        os.makedirs(self.tmp.join("clients"), mode=0o755, exist_ok=True)
        cert, key = self.tmp.join("tls.crt"), self.tmp.join("tls.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert], check=True,
                       capture_output=True)
        for path in (tokens, curve, key):
            os.chmod(path, mode)
        self.paths = {"http.tokens[0]": tokens, "http.status_tokens[0]": tokens,
                      "zmq.curve_secret_key": curve, "http.keyfile": key}
        return {"http": {"tokens": [f"file:{tokens}"], "status_tokens": [f"file:{tokens}"],
                         "certfile": cert, "keyfile": key},
                "zmq": {"curve_secret_key": curve, "curve_authorized_keys": self.tmp.join("clients")}}

    def test_validate_warns_about_each_secret_file_others_can_read(self):
        path = write_config(self.tmp.path, config_data(self.tmp.path, **self.secrets(0o644)))
        os.chmod(path, 0o600)
        result = zcmd("-y", path, "validate", "--quiet")
        self.assertEqual(result.returncode, 0, result.stderr)
        warnings = [line for line in result.stderr.splitlines() if "warning" in line]
        self.assertEqual(len(warnings), 4, result.stderr)
        for key, secret in self.paths.items():
            self.assertTrue(any(f"{key}: {secret} can be read by others (mode 0644)" in line
                                and f"chmod 600 {secret}" in line for line in warnings), (key, result.stderr))
        self.assertNotIn("a-token-for-the-test", result.stderr)

    def test_owner_only_secret_files_give_no_warning(self):
        path = write_config(self.tmp.path, config_data(self.tmp.path, **self.secrets(0o600)))
        os.chmod(path, 0o600)
        result = zcmd("-y", path, "validate", "--quiet")
        self.assertEqual((result.returncode, result.stderr), (0, ""))

    def test_a_token_written_in_a_config_file_others_can_read_is_warned_about(self):
        path = write_config(self.tmp.path, config_data(self.tmp.path, http={"tokens": ["inline-token"]}))
        os.chmod(path, 0o644)
        result = zcmd("-y", path, "validate", "--quiet")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"http.tokens[0]: the config file holding it, {path} can be read by others", result.stderr)
        self.assertNotIn("inline-token", result.stderr)

    def test_a_mongo_uri_holding_a_secret_in_any_form_is_warned_about(self):
        # What redact masks is what counts as a secret: a password option as much as user:password@.
        for uri, secret in (("mongodb://user:pw-one@127.0.0.1/", "pw-one"),
                            ("mongodb://127.0.0.1/?authSource=admin&password=pw-two", "pw-two")):
            with self.subTest(uri=uri):
                path = write_config(self.tmp.path, config_data(self.tmp.path, mongo={"uri": uri}))
                os.chmod(path, 0o644)
                result = zcmd("-y", path, "validate", "--quiet")
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertIn(f"mongo.uri: the config file holding it, {path} can be read by others", result.stderr)
                self.assertNotIn(secret, result.stderr)
        path = write_config(self.tmp.path, config_data(self.tmp.path, mongo={"uri": "mongodb://user:@127.0.0.1/"}))
        os.chmod(path, 0o644)
        self.assertEqual(zcmd("-y", path, "validate", "--quiet").stderr, "", "an empty password is no secret")

    def test_the_server_logs_the_same_warnings_at_start(self):
        sections = self.secrets(0o644)
        del sections["http"]["certfile"], sections["http"]["keyfile"]  # ServeProcess asks /imok over HTTP
        del self.paths["http.keyfile"]
        server = self.serve(**sections)
        self.assertEqual(server.stop(), 0)
        log = server.log()
        for key, secret in self.paths.items():
            self.assertIn(f"WARNING zspark.server: {key}: {secret} can be read by others", log)

    def test_an_authorized_keys_directory_others_can_write_is_refused(self):
        sections = self.secrets(0o600)
        clients = self.tmp.join("clients")
        os.chmod(clients, 0o777)
        result = zcmd("-y", write_config(self.tmp.path, config_data(self.tmp.path, **sections)), "validate")
        self.assertEqual(result.returncode, 2, result.stderr)
        for text in ("zmq.curve_authorized_keys", clients, "writable by group or others", "chmod go-w"):
            self.assertIn(text, result.stderr)
        os.chmod(clients, 0o755)
        with open(os.path.join(clients, "app.key"), "w") as f:
            f.write("not checked here\n")
        os.chmod(os.path.join(clients, "app.key"), 0o666)
        result = zcmd("-y", write_config(self.tmp.path, config_data(self.tmp.path, **sections)), "validate")
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn(os.path.join(clients, "app.key"), result.stderr)


if __name__ == "__main__":
    unittest.main()
