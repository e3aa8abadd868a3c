"""The zip reader writes the method numbers out (it does not import ``zipfile``): they must be zipfile's."""
import zipfile

from tensorsafe.readers import zip as zip_reader


def test_method_numbers_are_zipfiles():
    assert (zip_reader.ZIP_STORED, zip_reader.ZIP_DEFLATED, zip_reader.ZIP_BZIP2, zip_reader.ZIP_LZMA) == (
        zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
    assert zip_reader.ZIP_ZSTANDARD == getattr(zipfile, "ZIP_ZSTANDARD", 93)
