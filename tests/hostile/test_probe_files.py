"""What an independent probe found in the journal directory's rules after issue 10: zspark made
owner-only *everything* inside `journal.dir`, its own files or not. A journal pointed at a
directory that holds something else (`journal.dir: .` in an application's directory, where the
config file is relative to, or `/usr/local/lib/python3.11`, `/var/lib/dpkg`, `/root/.ssh`, none of
them on the system-directory list) had every file and directory in it, recursively, changed to
0600 / 0700 at start, with one log line: `bin/tool.py` of the application was no longer readable
or runnable by its users. Only zspark's own files (segments, `.lock`, cursors/, dead-letter/,
kafka/, notices/) may be changed; anything else is refused, or left as it is.
"""
import os
import subprocess

from tests.support import ServeProcess, config_data, write_config
from tests.hostile.test_files import FilesCase, mode_of


class ForeignFilesTest(FilesCase):
    def test_a_journal_in_a_directory_holding_other_files_changes_none_of_them(self):
        app = self.tmp.join("app")
        os.mkdir(app, 0o700)
        os.mkdir(os.path.join(app, "bin"), 0o755)
        tool = os.path.join(app, "bin", "tool.py")
        with open(tool, "w") as f:
            f.write("print('the application')\n")
        os.chmod(tool, 0o755)
        notes = os.path.join(app, "README")
        with open(notes, "w") as f:
            f.write("the application's notes\n")
        os.chmod(notes, 0o644)
        data = config_data(self.tmp.path, journal={"dir": "."})
        config = write_config(app, data)
        os.chmod(config, 0o644)
        server = ServeProcess(config, data["http"]["port"], self.tmp.join("serve.log")).spawn()
        self.addCleanup(server.kill)
        try:
            server.proc.wait(timeout=5)  # refused at start: fine
        except subprocess.TimeoutExpired:  # it serves: it must have left the application's files alone
            server.stop()
        self.assertEqual(mode_of(os.path.join(app, "bin")), 0o755, server.log())
        self.assertEqual(mode_of(tool), 0o755, server.log())
        self.assertEqual(mode_of(notes), 0o644, server.log())
        self.assertEqual(mode_of(config), 0o644, server.log())
        self.assertEqual(server.proc.returncode, 3, server.log())
        self.assertIn("holds files zspark did not make (README, bin, zspark.yaml)", server.log())
        self.assertIn("journal.allow_shared_dir", server.log())
